//! Switchyard packet generator.
