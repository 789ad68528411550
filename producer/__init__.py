"""The training process: environment, recurrent PPO agent, diagnostics and the telemetry publisher."""
