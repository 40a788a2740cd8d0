"""Pure-JAX transformer forward passes with named hook points, for harvesting activations and
splicing SAEs back in.

Every model's forward takes ``hook``, a function (layer, site, x) -> x' called at each hook point
(it may read x or return a replacement; None leaves the model unchanged), and ``capture``, the
(layer, site) points whose values to return. Sites (`SITES`):

- ``"attn_out"``: the attention block's output, before it is added to the residual stream;
- ``"mlp_in"``: the normalised input the MLP reads (BERT: the residual stream after the attention
  block's LayerNorm; Gemma-3: the MLP's pre-norm output); a hook replacing it changes what the MLP
  reads, not the residual stream; a transcoder reads it to reconstruct ``"mlp_out"``;
- ``"mlp_out"``: the MLP block's output, before it is added;
- ``"resid_post"``: the residual stream after the block (for post-LN BERT: after its LayerNorm).

    hidden, captured = bert.forward(params, config, ids, mask, capture=[(3, "resid_post")])
    acts = captured[(3, "resid_post")]                      # [B, T, d_model]
    spliced, _ = bert.forward(params, config, ids, mask, hook=splice(sae, params_sae, 3, "resid_post"))
"""

# In the order a block computes them (a transcoder's input site comes before its target site).
SITES = ("attn_out", "mlp_in", "mlp_out", "resid_post")
