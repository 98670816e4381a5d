"""Scale: device meshes, sharding rules, multi-host start-up, the memory planner, AOT compilation."""
