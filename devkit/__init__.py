"""Development-only code shared by the tests and the benchmarks: protocol fakes (TGI, vLLM,
Qdrant, Opik, AWS APIs, the Hugging Face Hub), tiny models built on the spot, an instant LLM.

Never bundled into a Lambda (stacks.bundling copies only the Lambdas' own packages) and never
imported by the app: `tools/` and `tests/` import it, `tests/` is imported by nobody."""
