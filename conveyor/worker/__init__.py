"""The worker: a consumer that leases messages, a pool that runs them, a runner that
turns one message into an outcome."""
