"""Local alignment heads: projections, attention pooling, sentence pooling, and method-specific modules."""
