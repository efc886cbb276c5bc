"""The API types: pydantic models of every resource, from which the CRDs are generated."""
