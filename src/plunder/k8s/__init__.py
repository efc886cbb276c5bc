"""The Kubernetes client seam: lightkube clients, typed handles for our kinds, CRD installation.

Nothing above this package builds URLs or parses raw API errors itself.
"""
