// Training size and time estimates for the Train form, from the training file's token statistics
// (report.token_stats of GET /v1/files/{id}) and the settings on the form. Throughputs are the figures
// measured for SmolLM2-135M on a 2-core CPU; a GPU is far faster and larger models slower, so the page
// says which assumption it used. OpenAI's "auto" rules are mirrored from ml.config.

export const TRAIN_TOKENS_PER_SECOND = { lora: 300, qlora: 160, full: 250 };
const DEEPSPEED_SLOWDOWN = 0.65; // ZeRO in one process: ~10 s vs 6.7 s a step (STACK.md)
const DECODE_TOKENS_PER_SECOND = 60; // batched sampling during online RL, fp32

export function autoEpochs(n) {
  if (n * 3 < 100) return Math.min(25, Math.max(1, Math.floor(100 / n)));
  if (n * 3 > 25000) return Math.max(1, Math.floor(25000 / n));
  return 3;
}

export function autoBatchSize(n) {
  return Math.max(1, Math.min(256, Math.ceil(0.002 * n)));
}

/** Tokens of one pass over the file when examples are cut at `maxLen` (histogram-weighted). */
export function tokensPerPass(stats, maxLen) {
  const { edges, counts } = stats.histogram || {};
  if (!edges || !maxLen || maxLen >= stats.max) return stats.total;
  let full = 0, capped = 0;
  counts.forEach((c, i) => {
    const mid = (edges[i] + edges[i + 1]) / 2;
    full += c * mid;
    capped += c * Math.min(mid, maxLen);
  });
  return full ? Math.round(stats.total * (capped / full)) : stats.total;
}

/**
 * method: method type; get(name): a setting's current value; file: the file object with its report.
 * Returns {steps, tokens, seconds, rate, basis} or null when the file has no token statistics.
 */
export function estimate(method, get, file) {
  const stats = file && file.report && file.report.token_stats;
  if (!stats || !stats.n) return null;
  const n = file.n_examples || stats.n;
  if (method === "supervised") {
    const epochs = get("n_epochs") === "auto" ? autoEpochs(n) : get("n_epochs");
    const batch = get("batch_size") === "auto" ? autoBatchSize(n) : get("batch_size");
    const maxSteps = get("max_steps");
    const stepsPerEpoch = Math.ceil(n / batch);
    const steps = maxSteps || stepsPerEpoch * epochs;
    const seen = Math.min(steps * batch, n * epochs);
    const tokens = Math.round((tokensPerPass(stats, get("max_seq_length")) / n) * seen);
    const adapter = get("adapter");
    let rate = TRAIN_TOKENS_PER_SECOND[adapter] || 300;
    const ds = adapter !== "qlora" && get("deepspeed"); // truthy when DeepSpeed is switched on
    if (ds) rate *= DEEPSPEED_SLOWDOWN;
    return { steps, epochs, batch, tokens, seconds: tokens / rate, rate,
      basis: `${{ lora: "LoRA", qlora: "QLoRA", full: "full fine-tuning" }[adapter] || adapter}${ds ? " + DeepSpeed" : ""} on SmolLM2-135M, 2-core CPU` };
  }
  if (method === "dpo" || method === "reward_model") {
    const epochs = get("n_epochs"), batch = get("batch_size"), maxSteps = get("max_steps");
    const steps = maxSteps || Math.ceil(n / batch) * epochs;
    const pairs = Math.min(steps * batch, n * epochs);
    // token_stats counts the longer side of each pair; both sides go through the model
    const tokens = Math.round((2 * tokensPerPass(stats, get("max_length")) / n) * pairs);
    const base = TRAIN_TOKENS_PER_SECOND[get("adapter") === "full" ? "full" : "lora"];
    const rate = method === "dpo" ? base * 0.75 : base; // DPO also runs the frozen reference
    return { steps, epochs, batch, tokens, seconds: tokens / rate, rate,
      basis: `${method === "dpo" ? "DPO" : "reward model"} on SmolLM2-135M, 2-core CPU` };
  }
  // online RL: sampling dominates
  const newTokens = get("sampling.max_new_tokens") || 64;
  let steps, samples, passes;
  if (method === "ppo") {
    steps = get("steps");
    samples = steps * get("rollouts_per_step");
    passes = get("ppo_epochs");
  } else {
    const batch = get("batch_size"), gens = get("num_generations"); // batch_size counts prompts
    steps = get("max_steps") || Math.ceil((n * get("n_epochs")) / batch);
    samples = steps * batch * gens;
    passes = get("num_iterations");
  }
  const generated = samples * newTokens;
  const tokens = samples * (Math.min(stats.mean, get("max_prompt_length")) + newTokens) * passes;
  const seconds = generated / DECODE_TOKENS_PER_SECOND + tokens / TRAIN_TOKENS_PER_SECOND.lora;
  return { steps, tokens, generated, seconds, rate: TRAIN_TOKENS_PER_SECOND.lora,
    basis: `sampling ~${DECODE_TOKENS_PER_SECOND} tok/s + LoRA updates, SmolLM2-135M, 2-core CPU (rough)` };
}
