"""Domain errors; the app maps each to its HTTP status with a JSON ``{"detail": ...}`` body."""

from __future__ import annotations


class DomainError(Exception):
    status_code = 400

    def __init__(self, detail):
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403
