"""Background jobs for Flask on Upstash QStash, tenants first."""

from __future__ import annotations

from .config import Tenant
from .errors import FlaskQStashError
from .errors import JobControl
from .errors import NonRetryableError
from .errors import PublishError
from .errors import RetryLater
from .errors import SignatureError
from .errors import UnknownJobError
from .errors import UnknownTenantError
from .extension import QStash
from .jobs import EnqueueResult
from .jobs import Job
from .jobs import JobContext
from .tenancy import current_tenant
from .tenancy import HeaderResolver
from .tenancy import PathPrefixResolver
from .tenancy import SubdomainResolver
from .tenancy import TenantMiddleware
from .webhooks import DeadJob

__version__ = "0.1.0.dev0"

__all__ = [
    "DeadJob",
    "EnqueueResult",
    "FlaskQStashError",
    "HeaderResolver",
    "Job",
    "JobContext",
    "JobControl",
    "NonRetryableError",
    "PathPrefixResolver",
    "PublishError",
    "QStash",
    "RetryLater",
    "SignatureError",
    "SubdomainResolver",
    "Tenant",
    "TenantMiddleware",
    "UnknownJobError",
    "UnknownTenantError",
    "current_tenant",
]
