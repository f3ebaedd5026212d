"""The web console at `/`, in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), against a broker holding data made by
real clients (confluent-kafka, pika): every page is loaded, a topic is
created, messages are browsed, a dead-lettered message is redriven and a
connection is closed, all by clicking. Screenshots of each page go to
target/console-screenshots/ for review."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pika.exceptions
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from amqp_util import connect
from http_util import get_ok
from confluent_kafka import TopicPartition

from interop_util import consume_n, create_topic, make_consumer, make_producer, produce_ok, wait_until

DEADLINE_S = 60.0
SCREENSHOTS = Path(__file__).resolve().parents[2] / "target" / "console-screenshots"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.1).until(
        lambda d: condition(d), message=f"timed out waiting for {what}"
    )


# Pages that poll (queues, connections) redraw their tables every 2 s: an
# element found a moment ago may be gone, so reads and clicks are retried.


def text_of(driver, css: str) -> str:
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


def click(driver, find, what: str) -> None:
    """Clicks what `find(driver)` returns, retrying while the page redraws."""

    def clicked(d):
        try:
            find(d).click()
            return True
        except (StaleElementReferenceException, NoSuchElementException, ValueError):
            return False

    wait_for(driver, clicked, what)


def shoot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def open_page(driver, ferry, hash_: str, ready_css: str, what: str):
    driver.get(f"{ferry.http_endpoint}/{hash_}")
    return wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ready_css), what)


def make_data(ferry):
    """Kafka records and a committed group; an exchange, a binding and a
    message dead-lettered by a rejection."""
    create_topic(ferry.bootstrap, "orders", partitions=2)
    producer = make_producer(ferry.bootstrap)
    produce_ok(producer, "orders", [{"value": f"order-{i}".encode(), "partition": i % 2} for i in range(40)])
    # Offsets 5 and 5 committed.
    consumer = make_consumer(ferry.bootstrap, **{"group.id": "billing"})
    consumer.assign([TopicPartition("orders", p, 0) for p in (0, 1)])
    consume_n(consumer, 40, timeout=DEADLINE_S)
    consumer.commit(offsets=[TopicPartition("orders", p, 5) for p in (0, 1)], asynchronous=False)
    consumer.close()

    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.queue_declare("work.dlq", durable=True)
    ch.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "work.dlq"})
    ch.queue_bind("work", "events", "job.*")
    ch.basic_publish("events", "job.resize", b"resize photo 7")
    method = wait_until(lambda: ch.basic_get("work", auto_ack=False)[0], what="the job in its queue")
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: get_ok(ferry, "/api/queues/%2F/work.dlq")["ready"] == 1, what="the job dead-lettered")
    conn.close()


def test_every_page_and_the_operator_flows(ferry, browser):
    make_data(ferry)

    # Overview: cards and the rates chart, drawn from a few polls.
    open_page(browser, ferry, "#/overview", "#overview-cards .card", "the overview cards")
    wait_for(browser, lambda d: "40" in text_of(d, "#overview-cards"), "the record count on the overview")
    # Traffic while the page polls: the chart gets samples and a rise.
    producer = make_producer(ferry.bootstrap)
    produce_ok(producer, "orders", [{"value": b"more", "partition": 0} for _ in range(200)])
    wait_for(browser, lambda d: "240" in text_of(d, "#overview-cards"), "the new records counted")
    wait_for(browser, lambda d: int(d.find_element(By.ID, "rates-chart").get_attribute("data-samples") or 0) >= 3,
             "three samples on the rates chart")
    shoot(browser, "overview")

    # Topics: create one by the form.
    open_page(browser, ferry, "#/topics", "#topics-table", "the topics table")
    assert "orders" in text_of(browser, "#topics-table")
    browser.find_element(By.ID, "new-topic-name").send_keys("made-in-console")
    partitions = browser.find_element(By.ID, "new-topic-partitions")
    partitions.clear()
    partitions.send_keys("3")
    browser.find_element(By.ID, "create-topic-submit").click()
    wait_for(browser, lambda d: "made-in-console" in text_of(d, "#topics-table"), "the new topic listed")
    assert get_ok(ferry, "/api/topics/made-in-console")["partition_count"] == 3
    shoot(browser, "topics")

    # A topic's partitions and its message browser.
    browser.find_element(By.LINK_TEXT, "orders").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "partitions-table"), "the partitions table")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#partitions-table tbody tr")) == 2
    Select(browser.find_element(By.ID, "browse-partition")).select_by_value("1")
    browser.find_element(By.ID, "browse-submit").click()
    wait_for(browser, lambda d: "order-1" in text_of(d, "#records-table"), "records of partition 1")
    rows = browser.find_elements(By.CSS_SELECTOR, "#records-table tbody tr")
    assert len(rows) == 20 and "order-0" not in text_of(browser, "#records-table")
    shoot(browser, "topic-browser")

    # Groups: lag per partition.
    open_page(browser, ferry, "#/groups", "#groups-table", "the groups table")
    assert "billing" in text_of(browser, "#groups-table")
    browser.find_element(By.LINK_TEXT, "billing").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#group-offsets-table tbody tr"), "the group's partitions")
    group = get_ok(ferry, "/api/groups/billing")
    assert group["lag"] == (220 - 5) + (20 - 5)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#group-offsets-table tbody tr")) == len(group["offsets"]) == 2
    shoot(browser, "group")

    # Exchanges and bindings.
    open_page(browser, ferry, "#/exchanges", "#bindings-table", "the exchanges page")
    assert "events" in text_of(browser, "#exchanges-table")
    assert "job.*" in text_of(browser, "#bindings-table")
    shoot(browser, "exchanges")

    # Queues, then the dead-letter queue: peek, redrive.
    open_page(browser, ferry, "#/queues", "#queues-table", "the queues table")
    wait_for(browser, lambda d: "work.dlq" in text_of(d, "#queues-table"), "the dead-letter queue listed")
    shoot(browser, "queues")
    click(browser, lambda d: d.find_element(By.LINK_TEXT, "work.dlq"), "the dead-letter queue's link")
    wait_for(browser, lambda d: "resize photo 7" in text_of(d, "#messages-table"), "the dead-lettered message peeked")
    assert "work (rejected)" in text_of(browser, "#messages-table")
    wait_for(browser, lambda d: "1 ready" in text_of(d, "#queue-counts"), "the queue's counts")
    wait_for(browser, lambda d: int(d.find_element(By.ID, "depth-chart").get_attribute("data-samples") or 0) >= 2,
             "two samples on the depth chart")
    shoot(browser, "dlq-before-redrive")
    browser.find_element(By.ID, "redrive").click()
    wait_for(browser, lambda d: "moved 1" in text_of(d, "#redrive-result"), "the redrive result")
    assert get_ok(ferry, "/api/queues/%2F/work")["ready"] == 1
    assert get_ok(ferry, "/api/queues/%2F/work.dlq")["messages"] == 0
    wait_for(browser, lambda d: "0 ready" in text_of(d, "#queue-counts"), "the emptied queue's counts")
    shoot(browser, "dlq-after-redrive")

    # Connections: close a pika connection from the console.
    held = connect(ferry, client_properties={"connection_name": "console-victim"})
    held.channel()
    open_page(browser, ferry, "#/connections", "#connections-table", "the connections table")
    wait_for(browser, lambda d: "console-victim" in text_of(d, "#connections-table"), "the pika connection listed")
    shoot(browser, "connections")

    def close_button(d):
        [row] = [r for r in d.find_elements(By.CSS_SELECTOR, "#connections-table tbody tr") if "console-victim" in r.text]
        return row.find_element(By.CSS_SELECTOR, "button.close-connection")

    click(browser, close_button, "the connection's Close button")
    deadline = time.monotonic() + DEADLINE_S
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        while time.monotonic() < deadline:
            held.process_data_events(time_limit=0.2)
    assert closed.value.reply_code == 320
    assert closed.value.reply_text == "CONNECTION_FORCED - Closed from the Ferry console"
    wait_for(browser, lambda d: "console-victim" not in text_of(d, "#connections-table"), "the closed connection gone")

    assert not browser.find_element(By.ID, "error").is_displayed(), text_of(browser, "#error")
