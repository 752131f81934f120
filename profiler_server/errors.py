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


# What a request that meets a stored row's constraint is told (409). The driver's message stays in the
# log: on PostgreSQL it quotes the key values of the row it met.
CONFLICT_DETAIL = "conflict with stored data (another request stored the same item at the same time); retry"


def validation_errors(errors: list[dict]) -> list[dict]:
    """Request validation errors without the ``input`` each carries: a 422 names the field and the
    problem, it does not send the request's body (tokens, serials) back."""
    return [{k: v for k, v in e.items() if k != "input"} for e in errors]
