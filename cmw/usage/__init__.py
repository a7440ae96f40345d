"""Usage: metering, real-time cost and cost estimates."""
