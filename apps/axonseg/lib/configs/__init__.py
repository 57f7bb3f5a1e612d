"""The structures axonseg serves, as plain data: one module per structure defines its SPEC; ``registry``
lists them. Nothing here imports trainers or infers (``lib.wiring`` builds those from the specs)."""
