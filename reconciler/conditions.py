"""The status conditions, declared once: their types and reasons are words users match on (in
`weft status`, the status JSON, the Kubernetes target's Events and alerts), so the loop that
sets them, the status that renders them and the targets that publish them share these names.

A condition's reason says why it holds its status: `Stalled` is True with `FetchFailed`,
`ValidationFailed`, `ApplyFailed` or `MaintenanceFailed`, and False with `Succeeded` or
`Recovered`. `CertificateWarning`'s reasons are `Valid` or the worst `identity.status.Concern`.
"""

from __future__ import annotations

from typing import Final

# Types
READY: Final = "Ready"  # the last good revision is in force
RECONCILING: Final = "Reconciling"  # a reconcile is running now
STALLED: Final = "Stalled"  # the loop cannot make progress without help
CERTIFICATE_WARNING: Final = "CertificateWarning"  # a certificate is expiring, expired or unusable

# Reasons
PROGRESSING: Final = "Progressing"
IDLE: Final = "Idle"
SUCCEEDED: Final = "Succeeded"
RECOVERED: Final = "Recovered"
FETCH_FAILED: Final = "FetchFailed"
VALIDATION_FAILED: Final = "ValidationFailed"
UNTRUSTED_REVISION: Final = "UntrustedRevision"  # not signed by a trusted key
APPLY_FAILED: Final = "ApplyFailed"
MAINTENANCE_FAILED: Final = "MaintenanceFailed"
VALID: Final = "Valid"
# What an Event says when no condition gives a reason (nothing has been reconciled yet).
RECONCILED: Final = "Reconciled"
