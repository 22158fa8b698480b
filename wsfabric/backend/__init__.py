"""The backend: the dispatcher that runs the application, and the backend role."""
