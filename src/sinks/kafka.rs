//! The kafka sink (in progress).
