"""HTTP routes, one module per resource; handlers parse, call one domain function, return a schema."""
