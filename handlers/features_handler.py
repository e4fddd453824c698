"""TorchServe handler for a zoo bottleneck-feature extractor: images of any size in, vectors out.

The vector is the backbone's globally pooled output, the same one features.onnx computes and a
user's own classifier (SVM, kNN, logistic regression) trains on. Requests take the same forms as
the classifier's; one image gets one list of floats, a list of images a list of them.
"""
from zoo_requests import ParsedRequest
from zoo_serving import ZooImageHandler


class FeaturesHandler(ZooImageHandler):
    def answer(self, outputs, request: ParsedRequest):
        vectors = [v.reshape(-1).tolist() for v, *_ in outputs]
        return vectors if request.many else vectors[0]
