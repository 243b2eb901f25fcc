// sliding-average: the average of readings over windows of 10 s every 5 s, on event time.
// Input: JSON readings {"value": 21.5}, produced with their event time, or carrying it as "time_ms", which wins.
// Output, per window: {"start": MS, "end": MS, "count": N, "average": X}.
// Run it: fnhost localrun --js examples/js-windows/sliding_average.js --name sliding-average --inputs readings --output averages --window-length-duration-ms 10000 --sliding-interval-duration-ms 5000 --event-time --max-lag-ms 2000 --until-idle

const decoder = new TextDecoder();

export default class SlidingAverage {
  process(window) {
    const values = window.values.map((value) => JSON.parse(decoder.decode(value)).value);
    const sum = values.reduce((total, value) => total + value, 0);
    return { start: window.start, end: window.end, count: values.length, average: sum / values.length };
  }

  eventTime(value) {
    return JSON.parse(decoder.decode(value)).time_ms;
  }
}
