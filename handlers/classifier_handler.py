"""TorchServe handler for a zoo classifier: images of any size in, top-k {label: probability} out.

Send raw image bytes, a multipart upload of one or more files, or JSON {"image": BASE64} /
{"images": [BASE64, ...]}. k comes from the `topk` query parameter, JSON key or header (default
in serving.json) and is never more than the number of classes. One image gets one object; a list
of images gets a list of objects, in order.

Each object lists the top-k labels first, most probable first, and then, when the archive holds an
OOD summary (ood.npz), one more key, "ood": {"score", "threshold", "out_of_distribution"}, scored by
zoo_inference.OodScorer on the pooled features the same forward pass computed.
"""
from zoo_inference import top_k
from zoo_requests import ParsedRequest, request_header, topk_option
from zoo_serving import ZooImageHandler


class ClassifierHandler(ZooImageHandler):
    uses_ood = True

    def check_options(self, request: ParsedRequest, context, idx: int) -> None:
        value = request.options.get("topk")
        if value is None:
            value = request_header(context, idx, ("topk", "x-topk"))
        request.options["k"] = topk_option(value, int(self.settings.get("default_topk", 5)), len(self.labels))

    def answer(self, outputs, request: ParsedRequest):
        answers = []
        for probabilities, *pooled in outputs:
            answer: dict = top_k(probabilities, self.labels, request.options["k"])
            if self.ood is not None and pooled:
                answer["ood"] = self.ood.fields(pooled[0][None], self.variant)[0]
            answers.append(answer)
        return answers if request.many else answers[0]
