from __future__ import annotations

from tests.edge.support import edge_stack


async def test_command_reaches_connected_agent_and_completes(nats_url: str, agent_id: str) -> None:
    async with edge_stack(nats_url) as stack:
        agent = await stack.agent(agent_id)
        sub = await stack.client.submit(agent_id, "send_message_now", {"thread_id": "t1", "text": "hi"})
        cmd = await agent.command()
        assert cmd["command_id"] == str(sub.command_id)
        for status in ("received", "executing", "completed"):
            await agent.ack(cmd["command_id"], status)
        await stack.wait_state(cmd["command_id"], "completed")
