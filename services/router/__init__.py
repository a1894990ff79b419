"""Router: picks a healthy, least-loaded worker for each request and proxies its stream."""
