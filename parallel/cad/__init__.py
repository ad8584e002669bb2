"""Core attention disaggregation (CAD): tasks and costs, the planner, the all-to-all
dispatch, attention servers, ping-pong overlap, and the `CADAttention` strategy."""
