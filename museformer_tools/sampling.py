"""The sampling loop of museformer-sample: top-k / top-p filtering, one generator per piece, and batched,
KV-cached decoding under the grammar mask (a piece that ends leaves the batch).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .controls import ControlError


def filter_logits(logits: torch.Tensor, top_k: int, top_p: Optional[float]) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k / top-p set at -inf."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def piece_generator(seed: int, piece: int) -> torch.Generator:
    """The random generator of piece number ``piece`` (0-based): the same seed and piece give the same draws,
    whatever the batch the piece is sampled in."""
    return torch.Generator().manual_seed((seed * 1_000_003 + piece) % 2**63)


def build_token_mask(args, task, tok_cfg, controls):
    """The mask of allowed next tokens: None (--no-grammar-mask), the grammar mask, or the grammar mask with the
    controls on top."""
    if not args.grammar_mask:
        return None
    from .controls import ControlMask
    from .grammar_mask import GrammarMask

    d = task.dictionary
    grammar = GrammarMask(d.symbols, d.eos(), tok_cfg)
    if not controls.active():
        return grammar
    return ControlMask(grammar, controls, tok_cfg, d.index("b-1"), args.max_length)


@torch.no_grad()
def sample_batch(model, task, prompt: List[int], generators: Sequence[torch.Generator], args, token_mask=None,
                 progress=None) -> List[List[int]]:
    """Sample one piece per generator, continuing ``prompt`` (ids, no BOS). Returns each piece's ids (no BOS/EOS).

    A piece ends at ``</s>``, at ``--max-length``, or at its last bar (``--bars`` / ``--max-bars``). It then leaves
    the batch: its row is dropped from the decoder's cache (``reorder_incremental_state``), from the token buffer
    and from ``token_mask``, so the following steps run only the pieces still going.
    """
    dec = model.decoder
    d = task.dictionary
    eos, bar_id = d.eos(), dec.bar_token
    device = next(model.parameters()).device
    B = len(generators)
    bar_limit = args.bars if args.bars is not None else args.max_bars
    # The decoder takes the whole sequence so far at every call (fairseq's convention) and runs only the new column;
    # a preallocated buffer passed as a view avoids a copy of the sequence per step.
    buf = torch.full((B, 1 + args.max_length), d.pad(), dtype=torch.long, device=device)  # (B, 1 + max_length)
    buf[:, 0] = eos
    buf[:, 1 : 1 + len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
    length = 1 + len(prompt)  # columns filled: BOS + prompt + sampled tokens
    pieces = [list(prompt) for _ in range(B)]
    bars = [prompt.count(bar_id)] * B
    alive = list(range(B))  # piece index of each row
    state: dict = {}
    if token_mask is not None:
        token_mask.reset(B)
        for tok in prompt:
            token_mask.update([tok] * B)
    special = torch.zeros(len(d), dtype=torch.bool, device=device)
    special[: d.nspecial] = True  # <s> <pad> </s> <unk> are never sampled (</s> is re-enabled below)
    while alive:
        # the decoder runs in the parameters' dtype (--dtype); the sampling maths below in fp32
        feats = dec(buf[:, :length], incremental_state=state, features_only=True)[0][:, -1]  # (B, C)
        logits = dec.output_layer(feats).float()  # (B, V): only the last position is projected
        eos_logit = logits[:, eos].clone()
        logits = logits.masked_fill(special, float("-inf"))
        can_end = torch.tensor([len(pieces[i]) >= args.min_tokens for i in alive], device=device)
        logits[:, eos] = torch.where(can_end, eos_logit, torch.full_like(eos_logit, float("-inf")))
        if token_mask is not None:
            allowed = token_mask.mask().to(device)
            allowed[~can_end, eos] = False
            if getattr(token_mask, "controls", None) is None:
                # the plain grammar mask never leaves a row empty with a REMIGEN dictionary; if it ever did, that row
                # falls back to no mask rather than failing
                allowed[~allowed.any(-1)] = True
            if not bool(allowed.any(-1).all()):
                raise ControlError("the controls left a piece with no allowed next token; loosen them (fewer "
                                   "--bars, a larger --max-length, or drop --time-signature / --tempo)")
            logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(filter_logits(logits / args.temperature, args.top_k, args.top_p), dim=-1).cpu()
        # one draw per piece from its own generator (CPU): a piece is the same in any batch
        nxt = [int(torch.multinomial(probs[r], 1, generator=generators[i])) for r, i in enumerate(alive)]
        if token_mask is not None:
            token_mask.update(nxt)
        keep = []
        for row, (i, tok) in enumerate(zip(alive, nxt)):
            if tok == eos:
                continue
            pieces[i].append(tok)
            bars[i] += tok == bar_id
            done = len(pieces[i]) >= args.max_length or (bar_limit is not None and bars[i] >= bar_limit)
            if not done:
                keep.append(row)
        if progress is not None:
            progress.update(len(alive))
        buf[:, length] = torch.tensor(nxt, dtype=torch.long, device=device)
        length += 1
        if len(keep) < len(alive):  # finished pieces leave the batch: the next steps no longer compute them
            if not keep:
                break
            order = torch.tensor(keep, dtype=torch.long, device=device)
            dec.reorder_incremental_state(state, order)
            buf = buf.index_select(0, order)
            if token_mask is not None:
                token_mask.select(keep)
            alive = [alive[r] for r in keep]
    return pieces
