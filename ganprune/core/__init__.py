"""What every stage stands on: errors, atomic files, output folders and locks, threads and device, the plugin
registry and guard, and the option schema (every option and default, declared once)."""
