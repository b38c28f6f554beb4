"""Policies of the seed (../shared/seed/) that tests and benchmarks apply unchanged."""

# §2.4's l7-http-policy, byte for byte (indentation restored): "frontend" serves :8080, "backend" is the client;
# it has no namespace, so kubectl (and apiary) put it in "default"
SEED_L7_HTTP_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: l7-http-policy
spec:
  endpointSelector:
    matchLabels:
      app: frontend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: backend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: "GET"
          path: "/api/v1/.*"
        - method: "POST"
          path: "/api/v1/orders"
          headers:
          - "Content-Type: application/json"
"""
