"""HTTP routers of the service, one module per resource. Route functions only translate HTTP
to calls of the service objects on ``request.app.state.runtime`` and back."""
