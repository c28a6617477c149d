"""HTTP only: blueprints, marshmallow schemas, authentication and problem+json errors."""
