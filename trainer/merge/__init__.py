"""`merge`: mergekit-style recipes streamed tensor by tensor into a new checkpoint."""
