"""`vlft demo <run_or_merged_dir>`: a local web page (Gradio) to upload an image or a video, ask, and watch the
answer being generated, with the generation settings at hand. Gradio is an optional extra:
`pip install -e ".[demo]"`.

The page's "answer" endpoint is what the page calls; `gradio_client` calls it too:
`Client("http://127.0.0.1:7860/").predict(handle_file("cat.png"), None, "what is this?", 16, 0.0,
api_name="/answer")` (an image classifier's takes the image alone).
"""

from __future__ import annotations

from vlft.data.records import DataError
from vlft.serve.loading import directory_kind, load_served, served_config
from vlft.serve.predictor import Predictor, check_visual

MAX_NEW_TOKENS_LIMIT = 1024


def _gradio():
    try:
        import gradio
    except ImportError:
        raise DataError('vlft demo needs Gradio: pip install -e ".[demo]"', reason=None) from None
    return gradio


def _answer_text(predictor: Predictor, task: str):
    """The page's "answer" function for a text model: the answer so far at every new piece, then the
    evaluation's decoded answer."""
    gr = _gradio()

    def answer(image, video, question, max_new_tokens, temperature):
        if image and video:
            raise gr.Error("Give an image or a video, not both.")
        if not (question or "").strip():
            raise gr.Error("Ask a question.")
        try:
            check_visual(predictor.served.cfg.data.video, image=image, video=video)
            stream = predictor.stream(predictor.record(question.strip(), image, video, task),
                                      int(max_new_tokens), float(temperature))
            shown = ""
            for piece in stream:
                shown += piece
                yield shown.lstrip()
        except DataError as err:
            raise gr.Error(str(err)) from None
        yield stream.answer

    return answer


def _answer_labels(predictor: Predictor, top_k: int):
    gr = _gradio()

    def classify(image):
        if not image:
            raise gr.Error("Upload an image.")
        try:
            check_visual(predictor.served.cfg.data.video, image=image)
            (prediction,) = predictor.predict([predictor.record(image=image)], top_k=top_k)
        except DataError as err:
            raise gr.Error(str(err)) from None
        return {entry["label"]: entry["probability"] for entry in prediction["labels"]}

    return classify


def _first_answer(predictor: Predictor, task: str, image: str | None, video: str | None, question: str,
                  top_k: int):
    """The answer to the question the page opens with (greedy), or None when it opens empty."""
    if not (image or video) or (predictor.labels is None and not question):
        return None
    (prediction,) = predictor.predict([predictor.record(question, image, video, task)], top_k=top_k)
    if "answer" in prediction:
        return prediction["answer"]
    return {entry["label"]: entry["probability"] for entry in prediction["labels"]}


def build_demo(predictor: Predictor, task: str = "vqa", image: str | None = None, video: str | None = None,
               question: str = "", top_k: int = 5):
    """The page: inputs on the left, the answer on the right. Given an image (or video) and a question, it opens
    with them filled in and answered."""
    gr = _gradio()
    served = predictor.served
    in_text = predictor.labels is None
    first = _first_answer(predictor, task, image, video, question, top_k)
    with gr.Blocks(title=f"vlft demo: {served.directory.name}", analytics_enabled=False) as demo:
        gr.Markdown(f"## vlft demo\n`{served.describe()}`")
        with gr.Row():
            with gr.Column():
                with gr.Tabs(selected="video" if video and not image else "image"):
                    with gr.Tab("image", id="image"):
                        image_in = gr.Image(type="filepath", label="image", value=image,
                                            sources=["upload", "clipboard"], height=260)
                    with gr.Tab("video", id="video", visible=in_text):
                        video_in = gr.Video(label="video", value=video, sources=["upload"], height=260)
                if not in_text:
                    inputs = [image_in]
                else:
                    question_in = gr.Textbox(label="question", value=question, lines=2)
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=served.cfg.eval.max_new_tokens, step=1,
                                               label="max new tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05,
                                            label="temperature (0: greedy, as in evaluation)")
                    inputs = [image_in, video_in, question_in, max_new_tokens, temperature]
                ask = gr.Button("Ask" if in_text else "Classify", variant="primary")
            with gr.Column():
                if in_text:
                    output = gr.Textbox(label="answer", lines=8, value=first)
                    function = _answer_text(predictor, task)
                else:
                    output = gr.Label(label="labels", num_top_classes=top_k, value=first)
                    function = _answer_labels(predictor, top_k)
        ask.click(function, inputs=inputs, outputs=output, api_name="answer")
        if in_text:
            question_in.submit(function, inputs=inputs, outputs=output, api_visibility="private")
    return demo


def run_demo(args) -> int:
    gr = _gradio()
    if args.image and args.video:
        raise DataError("give --image or --video, not both", reason=None)
    cfg = served_config(args.dir, directory_kind(args.dir))
    check_visual(cfg.data.video, image=args.image, video=args.video)
    predictor = Predictor(load_served(args.dir, args.device))
    try:
        demo = build_demo(predictor, args.task, args.image, args.video, args.question or "", args.top_k)
        print(f"vlft demo: {predictor.served.describe()}", flush=True)
        demo.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                            show_error=True, theme=gr.themes.Default(), footer_links=["api"])
    finally:
        predictor.close()
    return 0
