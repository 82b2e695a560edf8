"""After `make deploy`: print the API URL, how to read the API key, and a ready curl line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def api_outputs(outputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The outputs of the stack that has an ApiUrl (stack names depend on the project prefix)."""
    for values in outputs.values():
        if "ApiUrl" in values:
            return {k: str(v) for k, v in values.items()}
    raise KeyError("no stack output named ApiUrl: did the API stack deploy?")


def render(outputs: dict[str, dict[str, Any]]) -> str:
    api = api_outputs(outputs)
    url = api["ApiUrl"].rstrip("/")
    return "\n".join(
        [
            f"API:       {url}",
            f"Function:  {api.get('FunctionName', '?')}",
            f"API key:   export API_KEY=$({api['ApiKeyCommand']})",
            "Call it:",
            f"  curl -s -X POST {url}/rag -H 'content-type: application/json' "
            f'-H "x-api-key: $API_KEY" -d \'{{"query": "What do you think about RAG evaluation?"}}\'',
            f'  curl -s {url}/health -H "x-api-key: $API_KEY"',
            "Stop paying for the GPU: make destroy",
        ]
    )


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "build/outputs.json")
    if not path.is_file():
        print(f"{path} not found: run make deploy first", file=sys.stderr)
        return 1
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
