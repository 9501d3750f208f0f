from fastapi.testclient import TestClient


def test_health_answers_ok_with_a_request_id(client: TestClient) -> None:
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert len(r.headers["x-request-id"]) >= 16


def test_request_id_is_taken_from_the_caller(client: TestClient) -> None:
    r = client.get("/api/health", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.get("/api/health")
    client.get("/api/v1/repos/nobody/nothing")
    text = client.get("/metrics").text
    assert 'opensci_http_requests_total{method="GET",route="/api/health",status="200"}' in text
    assert "opensci_http_request_duration_seconds_bucket" in text
    assert 'status="404"' in text
