"""Read-only web pages of the service: devices, a device, a table, compare (server-rendered, Jinja2).

The pages work without JavaScript; ``static/ui.js`` (vendored, no other host) only adds in-place
sorting and filtering. They call the same domain functions as the API and show what a reader of
the API may see: serials and host names only to the admin and the device's own token."""
