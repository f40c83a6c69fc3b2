from redis.asyncio import Redis

async def test_probe(redis: Redis, redis_url: str) -> None:
    print("URL", redis_url)
    await redis.set("a", "1")
    assert await redis.get("a") == b"1"
    print(await redis.config_get("appendonly"), await redis.config_get("save"))

async def test_probe2(redis: Redis) -> None:
    assert await redis.get("a") is None
