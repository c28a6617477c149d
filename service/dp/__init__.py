"""The DP engine: query model, sensitivity, OpenDP mechanisms and exact cost arithmetic.

Pure functions over policy types and Polars frames; no Flask, no SQL. The service calls
:mod:`service.dp.engine`; the other modules are its parts.
"""
