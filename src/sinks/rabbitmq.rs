//! The rabbitmq sink (in progress).
