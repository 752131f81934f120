"""Domain functions of the service: everything the route handlers call. No HTTP here."""
