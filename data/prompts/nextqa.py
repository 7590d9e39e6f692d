# Question: why did the boy pick up the ball at the end of the video?
# Possible answers: (A) to throw it (B) to keep it (C) to give it to the dog (D) to clean it (E) to kick it
def execute_command(video_clip, query, possible_answers):
    end = trim(video_clip, start=video_clip.end_frame - 16)
    end = Filter_frames_with_obj(end, "ball")
    acts = Query_Actions(end, "boy", possible_answers)
    summary = Video_summary(end)
    info = {"actions of the boy with the ball": acts, "summary": summary}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: how many people are on the stage?
# Possible answers: (A) one (B) two (C) three (D) four (E) five
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_obj(video_clip, "stage")
    n = Count(clip, "person")
    people = Find(clip, "person")
    info = {"number of people": n, "frames with people": people}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: what does the lady do after she sits down?
# Possible answers: (A) drinks water (B) reads a book (C) claps (D) stands up (E) waves
def execute_command(video_clip, query, possible_answers):
    sit = Filter_frames_with_act(video_clip, "lady sits down")
    after = trim(video_clip, start=sit.end_frame)
    acts = Query_Actions(after, "lady", possible_answers)
    info = {"actions after sitting down": acts}
    answer = select_answer(query, possible_answers, info)
    return answer
