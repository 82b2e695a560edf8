from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.print_outputs import main, render

OUTPUTS = {
    "LlmTwinEndpoint": {"EndpointName": "llm-twin-twin-llama-3-1-8b"},
    "LlmTwinApi": {
        "ApiUrl": "https://abc123.execute-api.eu-west-1.amazonaws.com/v1/",
        "ApiKeyCommand": "aws apigateway get-api-key --api-key k1 --include-value --query value --output text --region eu-west-1",
        "FunctionName": "llm-twin-rag",
    },
}


def test_deploy_prints_a_ready_curl_line_with_the_key_command() -> None:
    text = render(OUTPUTS)
    assert "export API_KEY=$(aws apigateway get-api-key --api-key k1 --include-value" in text
    assert "curl -s -X POST https://abc123.execute-api.eu-west-1.amazonaws.com/v1/rag" in text
    assert "make destroy" in text


def test_missing_outputs_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.json")]) == 1
    assert "run make deploy first" in capsys.readouterr().err
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"LlmTwinEndpoint": {}}))
    with pytest.raises(KeyError, match="ApiUrl"):
        main([str(path)])
