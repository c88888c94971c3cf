"""NVFlare integration: the Client API client, job generation and simulator orchestration."""
