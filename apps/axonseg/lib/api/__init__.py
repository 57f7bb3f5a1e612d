"""The HTTP API, one module per resource. Route modules import :mod:`lib.api.common` and the library, never each
other or ``main``; :mod:`lib.api.install` alone touches FastAPI's, Starlette's and MONAI Label's internals."""
