"""The same checkpoint behind other serving frameworks, written as a user of each would write it from its docs.

`plain_torch` is the model code such a user writes once (normalise, pad a batch, one forward pass, log-softmax,
gather); `litserve_server` and `ray_server` put it behind LitServe's and Ray Serve's dynamic batching. The HTTP
load benchmark (`python -m benchmarks.http_load`) drives them with the same requests as the service.
"""
