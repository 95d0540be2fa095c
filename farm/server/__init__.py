"""farm's job server: one asyncio process speaking the Gearman binary and admin protocols."""
