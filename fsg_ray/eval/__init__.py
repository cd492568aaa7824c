"""Evaluation of one generator (SPEC §4), Ray-free: the protocol, its results, its report page, in-loop validation."""
