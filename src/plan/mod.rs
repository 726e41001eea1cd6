//! The pure planner: from an observed pool to the map, RPCs and statuses to write. No I/O, no clock: `now` is passed in.
