// Starts Swagger UI on the OpenAPI document that this dpx service generates.
// validatorUrl is null so the page never calls the public spec validator: dpx runs on
// networks with no internet access, and the page must load nothing from elsewhere.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    defaultModelsExpandDepth: 0
  });
});
