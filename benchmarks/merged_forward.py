"""Forward time of a merged model against the base model it came from (and the unmerged adapters).

    python benchmarks/merged_forward.py            # LLaVA and ViT, CPU fp32 (CUDA bf16 when present)
    python benchmarks/merged_forward.py --json

A LLaVA (CLIP-ViT 4 x 256 + Llama 4 x 512, one 224-pixel image and 64 text tokens, batch 4) and a ViT-S/16
(224 pixels, batch 16) get DoRA r=16 on every Linear and Conv2d of their towers, with random adapter
weights (B and the magnitude moved off their initial values, so the merge changes the weights). Rows:
`base` (no adapters), `dora-unmerged` (vlft's DoRA forward), `merged` (peft's merge_and_unload, which is
what `vlft merge` writes). Step times are medians of interleaved forwards under torch.no_grad().
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def llava_case(device, dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=224, patch_size=14)
    text = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                       vocab_size=4096, max_position_embeddings=512)
    image_tokens = (224 // 14) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=4095, vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_seq_length=image_tokens + 1)
    model = LlavaForConditionalGeneration(config)
    ids = torch.randint(0, 4000, (4, 64))
    ids = torch.cat([torch.full((4, image_tokens + 1), 4095), ids], dim=1).to(device)
    pixels = torch.randn(4, 3, 224, 224, device=device, dtype=dtype)
    targets = r".*(vision_tower|language_model).*\.(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|" \
              r"down_proj|patch_embedding)"
    return model, targets, lambda m: m(input_ids=ids, pixel_values=pixels).logits


def vit_case(device, dtype):
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10)
    pixels = torch.randn(16, 3, 224, 224, device=device, dtype=dtype)
    return model, r".*(qkv|proj|fc1|fc2)", lambda m: m(pixels)


def with_random_dora(model, targets: str):
    from peft import LoraConfig, get_peft_model

    from vlft.adapters.dora import use_vlft_dora

    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, use_dora=True))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.05 * torch.randn(param.shape, generator=generator).to(param.device))
    use_vlft_dora(peft_model)
    return peft_model


def time_rows(models: dict, forward, steps: int, warmup: int) -> dict[str, float]:
    times = {name: [] for name in models}
    with torch.no_grad():
        for i in range(warmup + steps):
            for name, model in models.items():  # interleaved: drift of the machine hits every row alike
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                start = time.perf_counter()
                forward(model)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_case(case: str, steps: int, warmup: int) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model, targets, forward = (llava_case if case == "llava" else vit_case)(device, dtype)
    base = model.to(device=device, dtype=dtype).eval()
    adapted = with_random_dora(copy.deepcopy(base), targets).to(device=device, dtype=dtype).eval()
    merged = copy.deepcopy(adapted).merge_and_unload().eval()
    error = (forward(merged).float() - forward(adapted).float()).abs().max().item()
    medians = time_rows({"base": base, "dora-unmerged": adapted, "merged": merged}, forward, steps, warmup)
    return [{"case": case, "impl": name, "forward_s": round(t, 5), "vs_base": round(t / medians["base"], 3),
             "device": device, "merged_vs_unmerged_max_abs": error} for name, t in medians.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="llava,vit")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for case in args.cases.split(",") for row in run_case(case, args.steps, args.warmup)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'case':<8} {'impl':<15} {'forward ms':>11} {'vs base':>8}   device {rows[0]['device']}")
    for row in rows:
        print(f"{row['case']:<8} {row['impl']:<15} {1000 * row['forward_s']:>11.1f} {row['vs_base']:>8.3f}")
    for case in dict.fromkeys(r["case"] for r in rows):
        err = next(r for r in rows if r["case"] == case)["merged_vs_unmerged_max_abs"]
        print(f"{case}: max |merged - unmerged| output difference {err:.2e}")


if __name__ == "__main__":
    main()
