//! Realistic Fondo events (in progress).
