//! Shared-memory SPSC rings between the control plane and the data plane.
