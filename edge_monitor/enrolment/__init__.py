"""Enrolment: sessions and their manager, the quality gate, versioned bank stores
with rollback, the audit log, and the local control socket.
"""
