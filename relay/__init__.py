"""outbox-relay: an SMTP relay that holds back seller mail breaking Amazon's review policy."""

__version__ = "0.1.0"
