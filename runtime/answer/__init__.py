"""The answer path: question -> retrieval -> prompt -> generation -> cited, routed answer."""
