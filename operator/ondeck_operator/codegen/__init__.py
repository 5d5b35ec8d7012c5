"""Generated artifacts from the API types: the CRD and the reference docs."""
